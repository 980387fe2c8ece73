"""Recorded watch steps (tests/data/steps-SCENARIO.jsonl, taken from the lab on kernel 6.18 by
scripts/record_steps; each line is {skb, new, step}) replayed into the journey builder."""
import json
import os

from dnattrace.watch import journeys
from dnattrace import model

DATA = os.path.join(os.path.dirname(__file__), "data")
# the lab's service: published 8080, DNAT target 172.31.0.2:80
SERVICES = [(6, 8080, None), (6, 80, "172.31.0.2")]


def rows(scenario):
    with open(os.path.join(DATA, "steps-%s.jsonl" % scenario)) as f:
        return [json.loads(line) for line in f]


def connections(scenario):
    return journeys.build(((r["skb"], model.step_from_dict(r["step"]), r["new"]) for r in rows(scenario)),
                          journeys.request_matcher(SERVICES))

"""counter.py's struct formats and flags against bpf/drops/drops.h (struct drops_config, FLAG_*,
DROPS_STAT_*) and bpf/common/drop_key.h (struct drop_key), compiled with the host compiler, so that the
two sides cannot drift apart."""
import re
import struct

import hostcc
from dnattrace.drops import counter


C_LAYOUT = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include "drops.h"
#define OFF(s, f) printf("%s.%s %zu\n", #s, #f, offsetof(struct s, f))
#define VAL(c) printf("%s %d\n", #c, (int)(c))
int main(void) {
    printf("drop_key.size %zu\n", sizeof(struct drop_key));
    OFF(drop_key, location); OFF(drop_key, reason); OFF(drop_key, netns); OFF(drop_key, stack_id);
    OFF(drop_key, l3proto); OFF(drop_key, port); OFF(drop_key, l4proto);
    printf("drops_config.size %zu\n", sizeof(struct drops_config));
    OFF(drops_config, netns); OFF(drops_config, port); OFF(drops_config, l4proto); OFF(drops_config, flags);
    VAL(FLAG_PORT); VAL(FLAG_STACKS); VAL(FLAG_NETNS);
    VAL(DROPS_STAT_OVERFLOW); VAL(DROPS_STAT_COUNTED);
    return 0;
}
"""

# field names in the order counter.py packs and unpacks them
KEY_FIELDS = ["location", "reason", "netns", "stack_id", "l3proto", "port", "l4proto"]
CONFIG_FIELDS = ["netns", "port", "l4proto", "flags"]


def offsets(fmt, names):
    """{name: offset} of the named (non-padding) fields of a little-endian struct format."""
    out, off, codes = {}, 0, re.findall(r"\d*[a-zA-Z]", fmt[1:])
    fields = iter(names)
    for code in codes:
        if code[-1] != "x":
            out[next(fields)] = off
        off += struct.calcsize("<" + code)
    return out


def c_layout(tmp_path):
    return {name: int(value) for name, value in hostcc.layout(tmp_path, C_LAYOUT, "drops", "common").items()}


def test_formats_and_flags_match_the_c_header(tmp_path):
    c = c_layout(tmp_path)
    assert c.pop("drop_key.size") == counter._KEY.size
    assert c.pop("drops_config.size") == counter._CONFIG.size
    py = {"drop_key." + k: v for k, v in offsets(counter._KEY.format, KEY_FIELDS).items()}
    py.update({"drops_config." + k: v for k, v in offsets(counter._CONFIG.format, CONFIG_FIELDS).items()})
    py.update(FLAG_PORT=counter.FLAG_PORT, FLAG_STACKS=counter.FLAG_STACKS, FLAG_NETNS=counter.FLAG_NETNS,
              DROPS_STAT_OVERFLOW=counter.STAT_OVERFLOW, DROPS_STAT_COUNTED=counter.STAT_COUNTED)
    assert c == py

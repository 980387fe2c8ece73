"""One module per blind scenario (a_*: helper A, b_*: helper B); the interface is in blind/README.md.
Whoever writes diagnose's causes must not read these until the engine is done."""

"""Fixture: records its pid in $TRIPOST_TEST_PID_DIR, then never finishes importing: stuck in one
C call that holds the GIL (a regex backtracking through 2**64 paths), so no Python thread of the
worker (such as a watch for the parent) ever runs again."""
import os
import re

open(os.path.join(os.environ["TRIPOST_TEST_PID_DIR"], str(os.getpid())), "w").close()
re.match(r"(a+)+$", "a" * 64 + "b")


def feedback(example, attempt):
    return "never reached"

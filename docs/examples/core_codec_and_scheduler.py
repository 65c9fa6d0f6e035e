"""The sans-IO core by hand: frames in and out, and one dispatch decision.

No sockets and no trio: the core is plain synchronous state machines, so
this runs as an ordinary script.  ``trioq._impl.core`` is whichever core is
active (see ``trioq.core_impl()``); both have the same API.  Run it with
``python docs/examples/core_codec_and_scheduler.py``; it checks its own
results and exits 0 only if they hold.
"""

from __future__ import annotations

import trioq
from trioq._impl import core

print("active core:", trioq.core_impl())

# -- the codec: many frames in one buffer, decoded from arbitrary chunks ------
encoder = core.FrameEncoder()
for request_id, payload in enumerate([b"hello", b"", b"x" * 1000], start=1):
    encoder.write(op=21, request_id=request_id, payload=payload)
wire = encoder.take()  # one bytes object: what a single socket write sends

decoder = core.FrameDecoder(max_frame_size=4096)
frames = []
for start in range(0, len(wire), 7):  # bytes arrive in whatever pieces TCP likes
    decoder.feed(wire[start : start + 7])
    frames.extend(decoder)  # yields only whole frames
assert [f.request_id for f in frames] == [1, 2, 3]
assert frames[0] == core.Frame(21, 1, b"hello")
assert decoder.at_boundary()  # no partial frame left: a clean place for EOF

# A peer announcing a frame larger than the limit is refused from its
# 4-byte length prefix alone, before any of the body is buffered.
hostile = core.FrameDecoder(max_frame_size=4096)
hostile.feed((1 << 30).to_bytes(4, "big"))
try:
    hostile.next_frame()
except trioq.RemoteProtocolError as exc:
    print("refused:", exc)
else:
    raise AssertionError("an oversized frame was accepted")
assert hostile.broken  # the stream cannot be re-synchronised

# -- the priority scheduler: priority first, then arrival; series; pull -------
scheduler = core.PriorityScheduler(policy="pull")
scheduler.add_worker("cpu", slots=2)
scheduler.add_worker("gpu", slots=1, series=["gpu"])
scheduler.add_task("report", priority=0)
scheduler.add_task("urgent", priority=10)
scheduler.add_task("train", priority=5, series="gpu")
scheduler.add_task("backup", priority=0)

assert scheduler.assignments() == []  # pull: nobody has asked for work yet
scheduler.request_work("cpu", 2)
scheduler.request_work("gpu")
assignments = dict(scheduler.assignments())
# "urgent" goes first; "train" can only run on the gpu worker; "report" was
# queued before "backup" at the same priority, so it runs first.
assert assignments == {"urgent": "cpu", "train": "gpu", "report": "cpu"}, assignments
assert scheduler.task_state("backup") == "queued"

assert scheduler.task_done("urgent") == "cpu"  # frees a slot on "cpu" ...
scheduler.request_work("cpu")  # ... which asks again
assert scheduler.assignments() == [("backup", "cpu")]
scheduler.validate()  # every internal invariant holds
print("dispatched:", assignments, "then backup -> cpu")

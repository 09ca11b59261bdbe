"""The media processor (docs/architecture.md §10): recording, transcoding and audio mixing
away from the SFU, in a process of its own. A Media Handler calls its MediaProcessing gRPC
service to start a job; the job joins the MH's room as a hidden participant with the
connection token the MH gave it, receives its source streams like any subscriber and
publishes what it derives like any publisher. Every job is a scope of the processor's task
tree; the codec work (PyAV, :mod:`darktower.processing`) runs on a worker thread per job.
"""

from darktower.processing import RecordingStore

from ._jobs import Jobs
from ._service import Running, serve
from ._settings import Settings

__all__ = ["Jobs", "RecordingStore", "Running", "Settings", "serve"]

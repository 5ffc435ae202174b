"""Speech recognition: the engine interface, the faster-whisper engine, VAD, model files.

CTranslate2 links libgomp, which reads ``OMP_NUM_THREADS`` once, when it is loaded, and
otherwise starts one OpenMP thread per core.  With ``cpu_threads`` 1 (one decode per thread,
``decode_workers`` of them) the extra OpenMP threads add no speed and burn CPU: measured on the
2-core machine, a 5 s final decode took 0.29 CPU-s for 0.20 s of wall time, 0.17 CPU-s for
0.17 s with ``OMP_NUM_THREADS=1`` (a partial 0.17 -> 0.10 CPU-s).  So unless it is set already,
the OpenMP pool is sized to ``CALLSCRIBE_CPU_THREADS`` (default 1) before anything here can load
CTranslate2.  ``callscribe`` (cli.py) sets it from the settings object first.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("CALLSCRIBE_CPU_THREADS", "1").strip()
                      or "1")

"""Serving kiln engines with NVIDIA Triton Inference Server (and KServe, which speaks the same V2
protocol).

    repository.py  `kiln triton-repo`: engine directories -> a Triton model repository (Python-backend
                   models running kiln's C++ runtime, text-in models, streaming generation, and the
                   native onnxruntime / pytorch / tensorrt directories for NVIDIA's containers)
    model.py       the one generic Python-backend model every Python model of a repository runs
    batching.py    what that model does with a batch of requests (exact or padded), without Triton
    config.py      config.pbtxt from Python data, checked against Triton's schema
    server.py      the Triton server bundled in nvidia-pytriton, started on a repository (`kiln serve`)
    load.py        `kiln bench-serve`: concurrent clients over loopback against Engine.run in-process
"""

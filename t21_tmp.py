import logging, time, numpy as np
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from engine.config import Config
from engine.vision.analyzer import FaceAnalyzer
from engine.models.registry import ModelRegistry
cfg = Config.load(env={})
cfg.models.dir = "/work/shared/models"
cfg.update({"runtime": {"shape_buckets": "on", "warmup": "on", "warmup_frame_sizes": ["640x360"], "fp16": "on", "bucket_sizes": [1,2,4]}, "embedder": {"batch_size": 4}})
t=time.time()
a = FaceAnalyzer.from_config(cfg)
print("load", time.time()-t)
print(a.detector.runner.session_stats()); print(a.embedder.runner.session_stats())

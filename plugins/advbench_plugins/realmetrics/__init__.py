"""Metrics for real images (the GPU / real-model path): FreezeAsGuard's judges, all with offline weights.

- ``face-distance`` / ``face-detect-rate``: dlib's 128-d ResNet face embedder (weights ship in the PyPI
  package ``face_recognition_models``), the stand-in for DeepFace's FaceNet distances.
- ``nudenet-score``: NudeNet's ONNX detector (weights ship in the ``nudenet`` wheel), summed probabilities of
  the exposed-body-part classes.
- ``openclip-score``: CLIP score with an open_clip model loaded from a *local* checkpoint file (never
  downloaded). The name ``clip-score`` belongs to the tiny world's judge.

Everything registers lazily ("module:Class"), so listing plugins imports neither dlib, onnxruntime nor torch.
See docs/metrics.md.
"""

from advbench.hookspecs import hookimpl

_M = "advbench_plugins.realmetrics"


@hookimpl
def register_metrics(register):
    register("face-distance", f"{_M}.faces:FaceDistance",
             "Real faces: dlib 128-d face-embedding distance to the class's references (lower better).")
    register("face-detect-rate", f"{_M}.faces:FaceDetectRate",
             "Real faces: share of generated images in which dlib detects a face.")
    register("nudenet-score", f"{_M}.nudity:NudeNetScore",
             "Real images: NudeNet's summed exposed-body-part probabilities (higher = more explicit).")
    register("openclip-score", f"{_M}.clip:OpenClipScore",
             "Real images: CLIP score with a local open_clip checkpoint (100 * max(cos, 0)).")

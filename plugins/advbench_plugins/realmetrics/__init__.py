"""Metrics for real images (the GPU / real-model path): FreezeAsGuard's judges, all with offline weights.

- ``face-distance`` / ``face-detect-rate``: dlib's 128-d ResNet face embedder (weights ship in the PyPI
  package ``face_recognition_models``), the stand-in for DeepFace's FaceNet distances.
- ``nudenet-score``: NudeNet's ONNX detector (weights ship in the ``nudenet`` wheel), summed probabilities of
  the exposed-body-part classes.
- ``openclip-score``: CLIP score with an open_clip model loaded from a *local* checkpoint file (never
  downloaded). The name ``clip-score`` belongs to the tiny world's judge.
- ``deepface`` / ``deepface-recognition``: face identity through deepface (Dlib out of the box with the weights of
  ``face_recognition_models``; FaceNet-512, ArcFace, ... from a local weights file).
- ``clean-fid`` / ``clean-kid``: FID / KID through clean-fid with its Inception network from a local file.
- ``lpips``, ``dino``, ``csd``: LPIPS distance, DINO similarity and CSD style similarity of generated images to
  the class's references (IMMA's and style mimicry's measures), each from local weight files.

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
    register("deepface", f"{_M}.deepface_metrics:DeepFaceDistance",
             "Real faces: deepface (Dlib, Facenet512, ...) distance to the class's reference faces (lower better).")
    register("deepface-recognition", f"{_M}.deepface_metrics:DeepFaceRecognition",
             "Real faces: share of generated faces whose nearest deepface gallery identity is the class.")
    register("clean-fid", f"{_M}.fid:CleanFID",
             "Real images: clean-fid FID to the class's references, local Inception weights (lower better).")
    register("clean-kid", f"{_M}.fid:CleanKID",
             "Real images: clean-fid KID to the class's references, local Inception weights (lower better).")
    register("lpips", f"{_M}.perceptual:LpipsDistance",
             "Real images: LPIPS distance to the class's references, local backbone weights (lower better).")
    register("dino", f"{_M}.similarity:DinoSimilarity",
             "Real images: DINO ViT-S/16 cosine similarity to the class's references, local checkpoint.")
    register("csd", f"{_M}.csd:CsdStyleSimilarity",
             "Real images: CSD style similarity to the class's references, local checkpoint.")

"""The tiny world: procedural domains, the embedded pretrained model and the judges (metrics).

Everything registers lazily ("module:Class"), so listing plugins imports no torch.
"""

from advbench.hookspecs import hookimpl

_W = "advbench_plugins.world"


@hookimpl
def register_domains(register):
    register("portraits", f"{_W}.domains:Portraits",
             "Tiny world: synthetic identities' portraits (public figures' stand-in); identity distance.")
    register("artworks", f"{_W}.domains:Artworks",
             "Tiny world: synthetic artists' paintings; style distance (CSD's role).")
    register("explicit", f"{_W}.domains:Explicit",
             "Tiny world: a restricted motif of detectable parts (explicit content's stand-in); motif score.")


@hookimpl
def register_datasets(register):
    register("world", f"{_W}.domains:WorldSource", "Tiny world: all benchmark classes of one procedural domain.")


@hookimpl
def register_metrics(register):
    m = f"{_W}.metrics"
    register("identity-distance", f"{m}:IdentityDistance", "Tiny world: FaceNet-style identity distance (lower better).")
    register("identity-recognition", f"{m}:IdentityRecognition", "Tiny world: share recognised as the identity.")
    register("style-distance", f"{m}:StyleDistance", "Tiny world: CSD-style style distance (lower better).")
    register("style-recognition", f"{m}:StyleRecognition", "Tiny world: share attributed to the artist.")
    register("motif-score", f"{m}:MotifScore", "Tiny world: NudeNet-style summed part probabilities.")
    register("motif-recognition", f"{m}:MotifRecognition", "Tiny world: share recognised as the motif class.")
    register("clip-score", f"{m}:ClipScore", "Tiny world: CLIP-score-style image-prompt alignment.")
    register("fid", f"{m}:FID", "Tiny world: Frechet distance on the world's image features (lower better).")
    register("kid", f"{m}:KID", "Tiny world: kernel inception distance on the world's features (lower better).")


@hookimpl
def register_commands(cli):
    from advbench_plugins.world.cli import world

    cli.add_command(world)

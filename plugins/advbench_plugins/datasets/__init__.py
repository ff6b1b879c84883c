"""Built-in dataset sources and the generic image-folder domain (for real data and real models)."""

from advbench.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register("imagefolder", "advbench_plugins.datasets.imagefolder:ImageFolderSource",
             "An image folder with metadata.jsonl (file_name, text, class), as diffusers' scripts use.")


@hookimpl
def register_domains(register):
    register("folder", "advbench_plugins.datasets.folder_domain:FolderDomain",
             "Any image folder + any local model folder: name the illegal/legal classes and the metrics.")

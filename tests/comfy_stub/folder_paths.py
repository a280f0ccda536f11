"""Stand-in for ComfyUI's folder_paths, rooted in $BODY4D_STUB_ROOT (a temp dir in tests)."""

import os
import tempfile

base_path = os.environ.get("BODY4D_STUB_ROOT", os.path.join(tempfile.gettempdir(), "body4d_stub"))
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict = {}
_dirs = {"input": os.path.join(base_path, "input"), "output": os.path.join(base_path, "output"),
         "temp": os.path.join(base_path, "temp")}


def set_base(path):
    global base_path, models_dir
    base_path = path
    models_dir = os.path.join(path, "models")
    for k in _dirs:
        _dirs[k] = os.path.join(path, k)
        os.makedirs(_dirs[k], exist_ok=True)
    folder_names_and_paths.clear()


def get_input_directory():
    return _dirs["input"]


def get_output_directory():
    return _dirs["output"]


def get_temp_directory():
    return _dirs["temp"]


def get_directory_by_type(t):
    return _dirs.get(t)


def filter_files_content_types(files, content_types):
    exts = {"video": (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif"), "image": (".png", ".jpg", ".jpeg", ".webp")}
    allowed = tuple(e for c in content_types for e in exts.get(c, ()))
    return [f for f in files if f.lower().endswith(allowed)]


def annotated_filepath(name):
    for t in ("input", "output", "temp"):
        suffix = f" [{t}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], _dirs[t]
    return name, None


def get_annotated_filepath(name, default_dir=None):
    name, base = annotated_filepath(name)
    return os.path.join(base or default_dir or _dirs["input"], name)


def exists_annotated_filepath(name):
    return os.path.exists(get_annotated_filepath(name))


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    paths, exts = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path not in paths:
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_folder_paths(folder_name):
    return folder_names_and_paths[folder_name][0][:]


def get_filename_list(folder_name):
    out = []
    for d in folder_names_and_paths.get(folder_name, ([], set()))[0]:
        if os.path.isdir(d):
            out += sorted(os.listdir(d))
    return out


def get_full_path(folder_name, filename):
    for d in folder_names_and_paths.get(folder_name, ([], set()))[0]:
        p = os.path.join(d, filename)
        if os.path.exists(p):
            return p
    return None


def get_full_path_or_raise(folder_name, filename):
    p = get_full_path(folder_name, filename)
    if p is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return p


def get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0):
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full = os.path.join(output_dir, subfolder)
    os.makedirs(full, exist_ok=True)
    counter = 1 + sum(1 for f in os.listdir(full) if f.startswith(filename + "_"))
    return full, filename, counter, subfolder, filename_prefix

"""Copy the two photos the installed ``ultralytics`` package ships (``bus.jpg``, ``zidane.jpg``) into
``examples/hog_people/images/``, the folder the example's ``pull.folder.images_dir`` names.

They are not committed here: ultralytics is AGPL-3.0 and the photos' own licence is not stated, so the example
references the installed copies instead. Nothing is downloaded. Run from the project root::

    .venv/bin/python examples/hog_people/photos.py

Exits with status 1 and a message naming the missing file when ultralytics or a photo is not installed.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

PHOTOS = ("bus.jpg", "zidane.jpg")
HERE = Path(__file__).resolve().parent


def ultralytics_assets() -> Path | None:
    """The ``assets`` folder of the installed ultralytics package (found without importing it), or None."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


def copy_photos(dest: Path = HERE / "images") -> list[Path]:
    """Copy :data:`PHOTOS` into ``dest`` (created); returns the copies. Raises FileNotFoundError naming a missing
    photo or package."""
    assets = ultralytics_assets()
    if assets is None:
        raise FileNotFoundError("the ultralytics package is not installed (pip install -e '.[dev]')")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PHOTOS:
        src = assets / name
        if not src.is_file():
            raise FileNotFoundError(f"{src}: not found in the installed ultralytics package")
        out.append(Path(shutil.copyfile(src, dest / name)))
    return out


if __name__ == "__main__":
    try:
        for path in copy_photos():
            print(path)
    except FileNotFoundError as exc:
        print(f"photos.py: {exc}", file=sys.stderr)
        sys.exit(1)

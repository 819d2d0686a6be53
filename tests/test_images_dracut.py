"""The dracut base directory: ramboot's 99ramboot module beside dracut's own, or stock dracut alone
(the seed's initrd in bench/debian_bench.py). The cached dracut tree is never changed."""

from __future__ import annotations

import os
from pathlib import Path

from ramboot.images.dracut import MODULE, _basedir


def _cached(tmp_path: Path) -> Path:
    dracut = tmp_path / "cache/usr/lib/dracut"
    (dracut / "modules.d/90livenet").mkdir(parents=True)
    (dracut / "dracut-functions.sh").write_text("# dracut\n")
    return dracut


def test_base_with_ramboots_module(tmp_path: Path) -> None:
    dracut = _cached(tmp_path)
    base = _basedir(dracut, tmp_path / "base", own_module=True)
    assert (base / "modules.d/90livenet").resolve() == (dracut / "modules.d/90livenet").resolve()
    mine = base / "modules.d" / MODULE
    scripts = sorted(p.name for p in mine.iterdir())
    assert "module-setup.sh" in scripts and "ramboot-livenetroot.sh" in scripts
    assert all(os.access(mine / s, os.X_OK) for s in scripts)
    assert sorted(p.name for p in (dracut / "modules.d").iterdir()) == ["90livenet"]


def test_stock_base_has_no_ramboot_module(tmp_path: Path) -> None:
    dracut = _cached(tmp_path)
    base = _basedir(dracut, tmp_path / "base", own_module=False)
    assert sorted(p.name for p in (base / "modules.d").iterdir()) == ["90livenet"]
    assert (base / "dracut-functions.sh").read_text() == "# dracut\n"

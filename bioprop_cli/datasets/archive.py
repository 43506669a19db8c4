"""Members of a zip archive, or the files of the folder it extracts to, read the same way (nothing extracted)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from bioprop_cli.data import BadDataFile, one_line, unsafe_member_name


class Members:
    """read(name) -> bytes of member `name` (a path relative to the archive's top); names() -> all of them."""

    def __init__(self, source: Path):
        self.source = source
        self.zip: zipfile.ZipFile | None = None
        if source.is_file():
            try:
                self.zip = zipfile.ZipFile(source)
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise BadDataFile(source, f"expected a complete zip archive, found a truncated or corrupt one "
                                          f"({one_line(error)})") from None
            for name in self.zip.namelist():
                if unsafe_member_name(name):
                    self.zip.close()
                    raise BadDataFile(source, f"the archive names a member outside its folder ({name!r}); not the "
                                              "published archive")

    def __enter__(self) -> Members:
        return self

    def __exit__(self, *exc) -> None:
        if self.zip is not None:
            self.zip.close()

    def names(self) -> list[str]:
        if self.zip is not None:
            return [name for name in self.zip.namelist() if not name.endswith("/")]
        return [path.relative_to(self.source).as_posix() for path in sorted(self.source.rglob("*")) if path.is_file()]

    def has(self, name: str) -> bool:
        if self.zip is not None:
            try:
                self.zip.getinfo(name)
                return True
            except KeyError:
                return False
        return (self.source / name).is_file()

    def read(self, name: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(name)
            return (self.source / name).read_bytes()
        except KeyError:
            raise BadDataFile(self.source, f"the archive has no member {name}") from None
        except FileNotFoundError:
            raise BadDataFile(self.source / name, "missing") from None
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
            raise BadDataFile(f"{self.source} member {name}", f"cannot read it: truncated or corrupt "
                                                              f"({one_line(error)})") from None

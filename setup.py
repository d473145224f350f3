"""Build hook: generate the gRPC code from proto/ and bundle the model manifest before packaging."""

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithProto(build_py):
    def run(self) -> None:
        sys.path.insert(0, str(ROOT))
        from engine.protogen import generate

        generate()
        data = ROOT / "engine" / "data"
        data.mkdir(exist_ok=True)
        shutil.copyfile(ROOT / "models" / "manifest.json", data / "manifest.json")
        super().run()


setup(cmdclass={"build_py": BuildWithProto})

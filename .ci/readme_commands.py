"""Print one of the README's two quick-start commands, so CI runs exactly what users run.

Usage: readme_commands.py install|test
"""
import re
import sys
from pathlib import Path

text = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
if len(blocks) != 2:
    sys.exit(f"README quick start must have exactly two bash blocks, found {len(blocks)}")
print(blocks[0 if sys.argv[1] == "install" else 1].strip())

"""The argument parser of every `plm` command: a usage error is one `error:` line like any user error."""

from __future__ import annotations

import argparse
from typing import NoReturn

from plmkit.errors import ConfigError


class PlmParser(argparse.ArgumentParser):
    """argparse prints the usage block and `prog: error: ...`; plmkit prints one line that names the command
    and how to see its options (the subcommand parsers argparse builds are of this class too)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}; see {self.prog} --help")

"""An atheris (libFuzzer) harness for the sans-IO protocol stack.

Feeds each input to ``FrameDecoder`` in chunks whose sizes come from the input itself, then
``decode_message`` and ``decode_event`` (see ``fuzzing.harness``); anything but
``ProtocolError``/``EventError`` is a crash. Run it directly::

    .venv/bin/python tests/reliability/fuzz_atheris.py -runs=200000 CORPUS_DIR

``test_reliability_fuzz.py`` runs it for a bounded number of inputs with a seed corpus of
valid and mutated frames when atheris is installed (``pip install atheris``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    from fuzzing import harness

    from trackd.errors import EventError, ProtocolError


def test_one_input(data: bytes) -> None:
    """One libFuzzer input: a few chunk sizes, then the stream."""
    fdp = atheris.FuzzedDataProvider(data)
    chunks = [fdp.ConsumeIntInRange(1, 512) for _ in range(fdp.ConsumeIntInRange(1, 4))]
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        harness(stream, chunks)
    except (ProtocolError, EventError):
        pass


def main() -> None:
    """Hand over to libFuzzer (arguments as for any libFuzzer binary)."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

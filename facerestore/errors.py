"""One exception family, so the CLI can turn any failure into one actionable line."""

from __future__ import annotations


class FaceRestoreError(Exception):
    """Base of every error the user should see as a single line (exit code 1)."""

    hint: str = ""
    exit_code: int = 1  # of the command line

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint or self.hint

    def one_line(self) -> str:
        """The message and its hint joined into the line the CLI prints."""
        text = str(self)
        return f"{text}; {self.hint}" if self.hint else text

    def one_line_for(self, path: object) -> str:
        """`one_line`, led by the file it failed: as it is where the message opens with that file
        (`x.png is truncated ...`, `x.png: 30x40 is not ...`), else `x.png: ` before it (an error of the
        batch the file was in, such as running out of memory, or about an output written for it).
        Only the opening counts: an output path that holds the input's name (`out/restored_imgs/x.png`)
        does not say which input failed."""
        text = self.one_line()
        name = str(path)
        return text if text.startswith((f"{name} ", f"{name}:")) else f"{name}: {text}"


class UsageError(FaceRestoreError):
    """Invalid option values or combinations, found before any work (exit code 2)."""

    exit_code = 2


class PeerFailed(FaceRestoreError):
    """Another torchrun process stopped with an error, which broke this one's next collective call.

    It carries that process's line and exit code, so the ranks exit alike and the main rank can say
    what happened; `training.distributed.process_group` raises it.
    """

    def __init__(self, rank: int, exit_code: int, message: str) -> None:
        super().__init__(f"rank {rank}: {message}")
        self.rank = rank
        self.exit_code = exit_code


class BadImage(FaceRestoreError):
    """An input file that is not a readable image, or is too large to process."""


class NoFaceFound(FaceRestoreError):
    """No face passed the detector's threshold; the image is still written."""


class WeightsError(FaceRestoreError):
    """A checkpoint is missing, cannot be downloaded, or cannot be read."""


class BadWeightsOption(UsageError, WeightsError):
    """A weights option (--weights, --base-weights, --init-from...) names no file or name that can be
    opened: missing, a folder, unreadable. A mistake on the command line, found before any work, so
    exit code 2 as other bad option values; still a WeightsError for the code that falls back on one."""


class ChecksumMismatch(WeightsError):
    """A file's sha256 differs from the catalogue's."""


class UnsupportedCheckpoint(WeightsError):
    """A checkpoint's keys or shapes do not match the architecture it is loaded into."""


class BadWeightsFile(BadWeightsOption, UnsupportedCheckpoint):
    """A file a weights option named that opens but is no checkpoint of what it is given for: truncated,
    damaged, another architecture, not an ONNX model. The command stops before any work and the user
    must change the option (or the file), as for a missing one: exit 2. Still an UnsupportedCheckpoint.
    Weights a command looks up itself, no option naming them (catalogue, cache, downloads), stay
    UnsupportedCheckpoint, exit 1: the command line is right, the machine's copy is not."""


class UnknownMethod(UsageError):
    """A --method name that the registry does not know."""

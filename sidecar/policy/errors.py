"""The policy engine's errors."""

from __future__ import annotations

from sidecar.masked_text import mask_card_numbers


class PolicyError(Exception):
    """Base of the policy engine's errors. Their text is logged, shown in /policy and printed
    at start, and may quote policy text (a test's name, a key) or a policy's input: card numbers
    are masked in it (the last guard: the checks that refuse such text do not quote it)."""

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(mask_card_numbers(message) if isinstance(message, str) else message, *args)


class PolicyLoadError(PolicyError):
    """A policy set cannot go live: it does not parse, compile, or pass its tests.

    ``file`` names the policy file at fault when one is known.
    """

    def __init__(self, message: str, file: str = "") -> None:
        super().__init__(f"{file}: {message}" if file else message)
        self.file = file
        self.message = mask_card_numbers(message)


class DecisionError(PolicyError):
    """A decision could not be made: evaluation failed, or its output is not valid.

    The message names the policy file and rule at fault when the output is wrong.
    """


class PolicyUnavailable(PolicyError):
    """The engine cannot decide and is configured to refuse: a retryable condition.

    The receiver answers gRPC UNAVAILABLE / HTTP 503, so the app's SDK retries and
    nothing is lost.
    """

    retryable = True

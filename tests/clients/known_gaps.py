"""Client behaviours tally does not match yet, each with the reason.

Every entry marks a test as a *strict* expected failure when the server under test is tally
(never against PostgreSQL): the test still runs and still asserts PostgreSQL's behaviour, and
the suite fails as soon as a gap closes (XPASS), so this list can only shrink. Keys are
``<file>::<test>`` under ``tests/clients``.
"""

KNOWN_GAPS: dict[str, str] = {}

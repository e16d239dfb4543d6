"""Budget periods: a budget counts what was spent since its period began, on UTC
calendar boundaries, so spend "resets" at the boundary without any job running: a
running total that belongs to an earlier period simply counts as nothing.

``total`` never resets; ``daily`` starts at 00:00 UTC; ``weekly`` on Monday 00:00 UTC;
``monthly`` on day ``reset_day`` (1 to 28, default 1) of the month, 00:00 UTC.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict
from typing import Any, Literal

Period = Literal["total", "daily", "weekly", "monthly"]
PERIODS: tuple[Period, ...] = ("total", "daily", "weekly", "monthly")
_UTC = datetime.UTC


def bounds(period: str, reset_day: int | None, now: float) -> tuple[float, float | None]:
    """The current period's start and end (epoch seconds; no end for ``total``)."""
    if period == "total":
        return 0.0, None
    today = datetime.datetime.fromtimestamp(now, _UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    if period == "daily":
        start = today
        end = start + datetime.timedelta(days=1)
    elif period == "weekly":
        start = today - datetime.timedelta(days=today.weekday())
        end = start + datetime.timedelta(weeks=1)
    elif period == "monthly":
        day = reset_day or 1
        start = today.replace(day=day)
        if start > today:  # this month's reset day is still ahead
            start = _add_months(start, -1)
        end = _add_months(start, 1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return start.timestamp(), end.timestamp()


class Budgeted:
    """What holds limits and budgets (a key, a user, a team): its spend this period."""

    __slots__ = ()
    used_tokens: int
    used_usd: float
    budget_period: str
    budget_reset_day: int | None
    period_start: float  # the period the running totals (used_*) belong to

    def current(self, now: float) -> tuple[int, float]:
        """Tokens and money spent in the period under way at ``now``: totals that
        belong to an earlier period count as nothing (the budget has reset)."""
        if self.budget_period == "total":
            return self.used_tokens, self.used_usd
        start, _ = bounds(self.budget_period, self.budget_reset_day, now)
        return (self.used_tokens, self.used_usd) if self.period_start >= start else (0, 0.0)

    def shown(self, now: float) -> dict[str, Any]:
        """As the admin API shows it: this period's spend, and when it resets."""
        view = asdict(self)  # type: ignore[call-overload]
        view["used_tokens"], view["used_usd"] = self.current(now)
        view["budget_resets_at"] = bounds(self.budget_period, self.budget_reset_day, now)[1]
        del view["period_start"]
        return view


def _add_months(moment: datetime.datetime, months: int) -> datetime.datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return moment.replace(year=index // 12, month=index % 12 + 1)  # reset days are <= 28

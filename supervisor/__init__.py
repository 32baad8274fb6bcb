"""The long-lived side of myctr and its CLI (a thin client of the runtime for now)."""

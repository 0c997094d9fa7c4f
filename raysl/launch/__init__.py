"""Launchers: the only place raysl imports Ray (Ray Train workers, Ray Tune studies)."""

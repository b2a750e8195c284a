"""Judging generated video: prompt adherence and continuity on the shapes world."""

"""The unit every duration in dbtkd and dbtkctl is written in: ``10 * SECONDS`` reads as what it
is. One definition for every module (dbtkctl imports it: no imports at all).
"""

SECONDS = 1.0

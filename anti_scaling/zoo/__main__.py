"""``python -m anti_scaling.zoo`` moved to ``python -m anti_scaling.scripts.zoo``.

Every command line lives in :mod:`anti_scaling.scripts`, and nothing below the
scripts imports them. This module imports nothing of ours: run as a program, it
says where the command went (one line on stderr) and runs it there, so that
commands written for the old place keep working.
"""

import runpy
import sys

if __name__ == '__main__':
    print(
        'anti_scaling: note: the zoo command line moved to '
        'python -m anti_scaling.scripts.zoo (this one forwards to it)',
        file=sys.stderr,
    )
    runpy.run_module('anti_scaling.scripts.zoo', run_name='__main__', alter_sys=True)

"""``python -m anti_scaling.zoo`` moved: every command line lives in :mod:`anti_scaling.scripts`.

This stub imports nothing of ours (the zoo sits below the scripts); it names
the new command in one line and exits with status 2.
"""

import sys

if __name__ == '__main__':
    args = ' '.join(sys.argv[1:]) or 'list'
    print(
        'anti_scaling: error: the zoo command line moved: '
        f'python -m anti_scaling.scripts.zoo {args}',
        file=sys.stderr,
    )
    sys.exit(2)

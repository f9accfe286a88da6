import sys

from bnref.cli import main

sys.exit(main())

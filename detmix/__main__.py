import sys

from detmix.cli import main

sys.exit(main())

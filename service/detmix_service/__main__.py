import sys

from detmix_service.server import main

sys.exit(main())

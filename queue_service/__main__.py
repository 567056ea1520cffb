import sys

from queue_service.cli import main

sys.exit(main())

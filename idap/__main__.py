import sys

from idap.cli import main

sys.exit(main())

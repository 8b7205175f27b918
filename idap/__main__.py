import sys

from idap.cli.commands import main

sys.exit(main())

import sys

from modelfs.commands.cli import main

sys.exit(main())

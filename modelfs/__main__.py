import sys

from modelfs.cli import main

sys.exit(main())

import sys

from vgpo.cli import main

sys.exit(main())

import sys

from ct_tune.cli import main

sys.exit(main())

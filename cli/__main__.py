import sys

from mrgen.cli.main import main

sys.exit(main())

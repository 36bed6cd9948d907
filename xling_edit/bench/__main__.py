import sys

from xling_edit.bench.edit_bench import main

sys.exit(main())

from xling_edit.report.cli import main

raise SystemExit(main())

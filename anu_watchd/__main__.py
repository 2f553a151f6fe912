from anu_watchd.cli import main

raise SystemExit(main())

from kcoro.cli import main

raise SystemExit(main())

from padistill.cli import main

raise SystemExit(main())

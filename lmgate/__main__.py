from lmgate.cli import main

raise SystemExit(main())

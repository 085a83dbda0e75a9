from napari_probseg.cli import main

raise SystemExit(main())

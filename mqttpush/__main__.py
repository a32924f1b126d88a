from mqttpush.cli import main

main()

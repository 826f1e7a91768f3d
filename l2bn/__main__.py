from l2bn.cli import main

main()

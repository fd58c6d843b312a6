// Command ferry-controller is the Ferry controller daemon.
package main

import (
	"os"

	"github.com/ferrydeploy/ferry/controller/controller"
)

func main() { os.Exit(controller.Main(os.Args[1:], os.Stdout, os.Stderr)) }

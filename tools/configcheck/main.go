// configcheck decodes a rendered Temporal server config into the server's own config struct
// with unknown keys rejected. The server itself ignores unknown keys silently, so a misspelt
// key (say `refreshIntervall`) would load fine and do nothing; this catches it.
//
// Usage: configcheck FILE...   exit 0 when every file decodes strictly and validates.
package main

import (
	"bytes"
	"fmt"
	"os"

	"go.temporal.io/server/common/config"
	"gopkg.in/yaml.v3"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: configcheck FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
			continue
		}
		fmt.Printf("%s: ok\n", path)
	}
	if failed {
		os.Exit(1)
	}
}

func check(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg config.Config
	decoder := yaml.NewDecoder(bytes.NewReader(data))
	decoder.KnownFields(true)
	if err := decoder.Decode(&cfg); err != nil {
		return fmt.Errorf("strict decode: %w", err)
	}
	// The same loader the server uses, including its validation of required fields.
	if _, err := config.Load(config.WithConfigFile(path)); err != nil {
		return fmt.Errorf("server loader: %w", err)
	}
	return nil
}

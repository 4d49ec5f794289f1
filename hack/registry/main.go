// The test bed's OCI registry: the CNCF distribution registry (registry.RootCmd: `registry serve CONFIG`) with
// only what the tests use linked in: the filesystem and in-memory storage drivers and htpasswd (basic) auth.
// The upstream main also links the Azure, GCS and S3 drivers, the pull-through proxy and token auth.
//
// One subcommand of its own: `registry htpasswd USER PASSWORD` prints an htpasswd line with a bcrypt hash
// (the only kind the htpasswd access controller accepts), so tests make users without another tool.
package main

import (
	"fmt"
	"os"

	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/bcrypt"
)

func main() {
	registry.RootCmd.AddCommand(&cobra.Command{
		Use:   "htpasswd USER PASSWORD",
		Short: "print an htpasswd line (bcrypt) for USER",
		Args:  cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			hash, err := bcrypt.GenerateFromPassword([]byte(args[1]), bcrypt.DefaultCost)
			if err != nil {
				return err
			}
			fmt.Printf("%s:%s\n", args[0], hash)
			return nil
		},
	})
	if err := registry.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}

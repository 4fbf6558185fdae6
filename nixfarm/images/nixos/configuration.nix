# The NixOS image's system (genimg builds it with nixos-install on a NixOS host).
{ ... }: {
  boot.isContainer = true;  # the runner's kernel and initramfs boot it
  users.users.build = { isNormalUser = true; uid = 1000; extraGroups = [ "wheel" ]; };
  security.sudo.wheelNeedsPassword = false;
  networking.hostName = "build";
  system.stateVersion = "24.05";
}
